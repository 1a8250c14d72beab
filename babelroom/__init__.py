"""The service's entry points: the `babelroom` command and the `up` supervisor. They sit above the
gateway, the pipeline and the workers, which they start."""
