"""`worker dlq inspect | replay`: the dead-letter topic read, a replay planned and published."""
