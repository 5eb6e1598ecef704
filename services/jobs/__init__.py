"""Jobs: where their states live, the table of job kinds, and the in-process dispatcher."""
