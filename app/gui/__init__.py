"""The operator window (PySide6): QObject adapters over :mod:`app.services`, thin widgets, one qasync loop.

``adapters/`` are the only place asyncio meets Qt (they own service tasks and emit signals);
``widgets/`` render what the adapters emit and forward the operator's intent; the window and
its panels are assembled by :mod:`app.bootstrap`. Everything here runs on the GUI thread.
"""
