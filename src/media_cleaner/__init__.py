"""Media Cleaner: imperceptible perturbations that make face detectors and speech recognisers fail."""

__version__ = "0.1.0"
