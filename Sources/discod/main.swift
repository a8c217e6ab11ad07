import Daemon

DiscodCommand.main()
