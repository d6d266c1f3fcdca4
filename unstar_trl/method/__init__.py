"""The method: probe what a model still knows, write and filter anti-samples, and the unlearning trainers."""
