"""The decomposition of the test-1 → test-2 gap into mechanism terms (Shapley over reverts)."""
