"""The development harness, apart from the product: the scripted LiveKit caller, the private
network namespace, a dev livekit-server, process supervision, the voice loop on one machine and
the demo. Nothing under ``voxbus.services`` imports it; the tests, the demo and the benchmarks
do."""
