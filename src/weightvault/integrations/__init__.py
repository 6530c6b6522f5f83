"""Protecting a training run from inside it: a durable upload queue, a worker process, and the
framework hooks built on them. Importing this package imports no ML framework; each framework
module (``integrations.torch`` ...) imports its own, and needs its optional extra."""
