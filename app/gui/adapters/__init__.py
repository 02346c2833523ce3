"""QObject adapters: each owns one service, runs its coroutines on the qasync loop, emits signals."""
