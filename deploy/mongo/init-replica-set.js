// mongosh --file deploy/mongo/init-replica-set.js
// Initiates the 3-member replica set `rs0` of deploy/compose.yaml (idempotent), waits for a
// primary, then creates the per-service users (init-users.js, same folder).
// Run by the one-shot `mongo-init` container against mongo-1 as the root user.
const members = (process.env.GRIDCASE_MONGO_MEMBERS || "mongo-1:27017,mongo-2:27017,mongo-3:27017")
  .split(",")
  .map((host, i) => ({ _id: i, host: host.trim(), priority: i === 0 ? 2 : 1 }));

function initiated() {
  try {
    rs.status();
    return true;
  } catch (e) {
    if (e.codeName === "NotYetInitialized" || /no replset config/i.test(String(e.message))) return false;
    throw e;
  }
}

if (!initiated()) {
  print(`initiating rs0 with ${members.map((m) => m.host).join(", ")}`);
  rs.initiate({ _id: "rs0", members, writeConcernMajorityJournalDefault: true });
} else {
  print("rs0 already initiated");
}

const deadline = Date.now() + 120 * 1000;
while (!db.hello().isWritablePrimary) {
  if (Date.now() > deadline) throw new Error("no primary after 120 s");
  sleep(1000);
}
print(`primary: ${db.hello().me}`);

load(`${process.env.GRIDCASE_MONGO_INIT_DIR || "/docker-entrypoint-initdb.d"}/init-users.js`);
