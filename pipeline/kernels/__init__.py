# Public modules: pure array functions (numpy or cupy), one domain each.
__all__ = ["artifacts", "dispatch", "features", "nuclei", "outlines", "stain", "level_flood", "tissue"]
