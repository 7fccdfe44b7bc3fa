# Public modules and subpackages.
__all__ = ["annotations", "input_files", "outputs", "readers"]
