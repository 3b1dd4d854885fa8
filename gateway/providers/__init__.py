"""Provider adapters: each translates the normalized request out and the answer back."""
