"""The contract between the services, written once: topics and keys (`topics`), the CloudEvents
envelope (`envelope`), every event's payload model (`payloads`), and which service writes and which
consumer groups read each event (`catalog`). Producers, consumers, the AsyncAPI document and the ops
tools all use these."""
