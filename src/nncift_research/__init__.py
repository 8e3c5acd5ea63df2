"""Research code on top of the library: the experiment (fine-tune on each subset and compare), its data splits,
analysis and report, the fidelity study, the u x v sweep and the network-size shapes.

The library (everything outside this package) never imports from here; ``tests/test_architecture.py`` checks that.
"""
