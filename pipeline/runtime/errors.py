"""The runtime's one error: a model file that is missing or does not meet the contract. Its own
module, so that the facade and every backend can raise it without importing one another."""


class ModelError(Exception):
    """The model file is missing or does not meet the contract."""
