"""The development stack (the `[dev]` extra): the embedded broker and PostgreSQL (`stack`), the
`worker dev` command that runs a whole system on one machine (`command`), and the sample events
of the seed documents (`seeds`). Nothing in the running worker imports this package.
"""
