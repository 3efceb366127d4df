"""The compiler's version: part of every manifest and cache key."""
__version__ = "0.1.0"
