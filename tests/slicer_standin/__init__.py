"""TEST STAND-IN — this is NOT 3D Slicer.

Small imitations of the ``slicer`` (with ``slicer.packaging``, not imported by ``import slicer``, as in Slicer),
``qt``, ``vtk``, ``PyTorchUtils`` and ``SampleData`` names that ``MedDenoise/MedDenoise.py`` uses, so that pytest can
import the module and drive its Logic and self-test without Slicer (which cannot be installed on the CI machines).
They were read against Slicer 5.10-5.13 and SlicerPyTorch and are at least as strict where it matters: parameter
types and ranges, RuntimeError from ``updateVolumeFromArray``, testing mode, display nodes, the subject hierarchy.
Volume nodes hold a NumPy array (K x J x I) and a 4x4 IJK-to-RAS matrix; the scene is a list; ``qt.QTimer`` fires only
when a test calls ``qt.process_events()``. Put this folder on ``sys.path`` (see ``tests/test_slicer_module.py``).

``slicer_python.py`` runs a script with only Slicer's packages importable; ``render_panel.py`` draws the panel from
the ``.ui`` for the README.
"""
