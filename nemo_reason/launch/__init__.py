"""Starting ranks: local spawn (torch elastic, as torchrun does); slurm and docker arrive with the launcher issue."""
