"""Hugging Face checkpoint -> .wq conversion (torch and transformers live here and only here)."""
