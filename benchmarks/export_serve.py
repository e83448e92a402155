"""Export and serving numbers on a random-init Llama (measured, printed; not a test).

    PYTHONPATH=src python benchmarks/export_serve.py [--hidden 256 --layers 4]

Prints, for hf / onnx / onnx-int8: size on disk, max |Δlogit|, greedy agreement, ms per answer (torch → export);
then the server: 32 concurrent chat completions vs the same 32 sent one after another, over real HTTP.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--requests", type=int, default=32)
    args = ap.parse_args()
    import torch
    from _serving import running
    from openai import OpenAI

    from potstill import export
    from potstill.demo.tiny import build_tokenizer, save_model, tiny_llama
    from potstill.server import build_app

    torch.set_num_threads(1)
    texts = [f"What is {a} plus {b}? Answer: {a + b}" for a in range(30) for b in range(30)]
    tok = build_tokenizer(texts, vocab_size=1000)
    model = tiny_llama(tok, hidden=args.hidden, layers=args.layers, heads=4)
    with tempfile.TemporaryDirectory() as tmp:
        src = save_model(model, tok, Path(tmp) / "model")
        params = sum(p.numel() for p in model.parameters())
        print(f"model: Llama hidden {args.hidden}, {args.layers} layers, {params / 1e6:.2f}M parameters, 1 thread")
        import json

        export(src, ["hf", "onnx", "onnx-int8"], prompts=8, max_new_tokens=32)
        manifest = json.loads((src / "export" / "manifest.json").read_text())
        print(f"{'format':10} {'MB':>7} {'max|Δlogit|':>12} {'greedy eq':>9} {'torch ms':>9} {'export ms':>9} {'x':>5}")
        for fmt, e in manifest["exports"].items():
            p = e["parity"]
            lat = p["latency_ms"]
            print(
                f"{fmt:10} {e['size_mb']:7.2f} {p['max_abs_logit_diff']:12.2e} "
                f"{p['greedy_equal']:>6}/{p['prompts']:<2} "
                f"{lat['torch']:9.1f} {lat['export']:9.1f} {lat['torch'] / lat['export']:5.2f}"
            )
        for fmt in ("hf", "onnx-int8"):
            app = build_app(src / "export" / fmt, max_tokens=32, max_batch=8)
            with running(app) as url:
                client = OpenAI(base_url=url, api_key="x", max_retries=0)

                def ask(i: int, client: OpenAI = client, name: str = fmt) -> int:
                    r = client.chat.completions.create(
                        model=name,
                        messages=[{"role": "user", "content": f"What is {i} plus {i + 1}?"}],
                        max_tokens=32,
                        temperature=0,
                    )
                    return r.usage.completion_tokens

                ask(0)
                t0 = time.perf_counter()
                seq = sum(ask(i) for i in range(args.requests))
                t_seq = time.perf_counter() - t0
                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.requests) as pool:
                    par = sum(pool.map(ask, range(args.requests)))
                t_par = time.perf_counter() - t0
            print(
                f"serve {fmt:9}: {args.requests} requests one by one {t_seq:.2f}s ({seq / t_seq:.0f} tok/s); "
                f"concurrent {t_par:.2f}s ({par / t_par:.0f} tok/s), {t_seq / t_par:.2f}x"
            )


if __name__ == "__main__":
    main()
