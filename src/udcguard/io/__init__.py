"""File input/output: image decoding, scene discovery, atomic writes, manifests."""
