"""The development stack (the `[dev]` extra): the embedded broker and PostgreSQL (`stack`), the
`worker dev` command that runs a whole system on one machine (`command`), and the sample events
of the seed documents (`seeds`). Only the command line imports it; no module of the core does.
"""
