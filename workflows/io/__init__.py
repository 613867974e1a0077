"""The activities' inputs and outputs: the contract between ReleaseWorkflow and its activities.

They live with the workflow (the lowest floor) because both sides import them: the workflow
builds the inputs and reads the results, the activities do the opposite. Pydantic models
only, deterministic and light like the rest of `workflows/`; moving a model between modules
does not change its payload (the pydantic data converter records no module names).
"""
