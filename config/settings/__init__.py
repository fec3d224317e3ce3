"""Settings package: ``base`` holds everything; the others only adjust it.

``local`` is for a developer's machine, ``test`` for the suite, ``production`` for a
deployment. Production differs from local only through environment variables.
"""
