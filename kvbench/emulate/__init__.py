"""HTTP emulators of vLLM, SGLang and TensorRT-LLM, backed by kvbench's engine simulator in real
time (or answering instantly in zero-latency mode). Every response carries the
`X-Kvbench-Emulated` header so results measured against an emulator are labelled emulated."""
