"""fedsqueeze example: a training loop (FedProx) and a codec stage (scaled signs) from outside the package."""
