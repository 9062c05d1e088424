import signal

from .cli import main

try:
    code = main()
finally:
    # The command is over, its output flushed: a Ctrl-C in the second or two the interpreter then takes to
    # tear torch down printed a traceback from an atexit callback. Nothing is left to interrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
raise SystemExit(code)
