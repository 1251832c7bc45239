"""What each query and mutation does, in plain Python: arguments in, records and errors out.

The schema layer turns GraphQL inputs into these calls and the results into GraphQL types.
"""
