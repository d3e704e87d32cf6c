"""TEST STAND-IN — this is NOT 3D Slicer.

A small imitation of the ``slicer``, ``qt`` and ``vtk`` names that ``MedDenoise/MedDenoise.py`` uses, so that pytest can
import the module and drive its Logic without Slicer (which cannot be installed on the CI machines). Volume nodes hold
a NumPy array (K x J x I) and a 4x4 IJK-to-RAS matrix; the scene is a list; ``qt.QTimer`` fires only when a test calls
``qt.process_events()``. Put this folder on ``sys.path`` (see ``tests/test_slicer_module.py``); nothing else imports it.
"""
