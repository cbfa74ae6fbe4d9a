# engine model loading and CPU backend (filled in by the model work)
