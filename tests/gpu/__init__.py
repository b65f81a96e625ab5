"""The GPU check (make gpu-check): a package, so that its conftest is not the module ``conftest`` that the
other tests import helpers from."""
