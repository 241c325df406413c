"""UDC image formation: HDR scene preparation, PSF convolution, tone maps, pair synthesis."""
