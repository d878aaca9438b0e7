"""Test and benchmark tooling shared through the project (tests never import `benchmarks/`):
doubles for every boundary (`fakes`), loopback servers and throwaway databases (`harness`), the
fault matrix (`faults`) and the crash/duplicate runner (`chaos`). Nothing here runs in
production; everything it grades is simulated."""
