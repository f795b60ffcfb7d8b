"""Protectors: each one perturbs one modality against one family of target models."""
