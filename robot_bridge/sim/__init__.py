"""Simulation nodes (not deployed on robots): a Meta-World arm behind a real arm's topics and a
scripted corrective teleoperator. They use training/sim for the simulator and the takeover rule
(one implementation shared with the training harness); the bridge itself imports neither."""
