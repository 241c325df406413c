"""udcguard: adversarial robustness of UDC image restoration."""
__version__ = "0.1.0"
