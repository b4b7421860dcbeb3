"""Meta-World as the simulated arm, scripted operators and the corrective teleoperator, episode
collection through the real episode store, and evaluation. See shared/notes/metaworld.md."""
