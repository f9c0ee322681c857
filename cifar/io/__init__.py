"""File bytes and places: local paths and URIs behind one API (storage), image decoding."""
