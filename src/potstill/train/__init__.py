"""Student training: tokenisation with assistant-only loss (data.py), the loop (trainer.py), the stage."""
