from audiohook.relay.server import main

main()
