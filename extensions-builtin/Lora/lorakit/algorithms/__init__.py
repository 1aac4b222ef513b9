"""The strategies (one module per algorithm), their shared math and the one recogniser of a group of parts."""
