import DiscoClient

DiscoctlCommand.main()
