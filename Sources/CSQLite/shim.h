// The system SQLite (Debian libsqlite3-dev): no bundled copy, so durability settings such as
// synchronous=FULL are the ones we ask for.
#include <sqlite3.h>
