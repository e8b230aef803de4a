"""Models: resolve a model by name, pretrained tag, checkpoint or folder, load it, remember its identity."""
