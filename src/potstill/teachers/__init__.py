"""Teachers: local Hugging Face models (hf.py), the request cache (cache.py), and the generate stage."""
