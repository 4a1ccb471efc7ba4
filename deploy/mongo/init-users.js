// mongosh --file deploy/mongo/init-users.js  (also loaded by init-replica-set.js)
// One user per service with readWrite on its own database `gridcase_<service>` and nothing
// else: services never read each other's collections (DESIGN §1). stats builds its
// projections from events, so it too only reaches gridcase_stats.
// Passwords come from the environment (GRIDCASE_MONGO_<SERVICE>_PASSWORD), never from files.
// Idempotent: an existing user gets its password and roles reset (credential rotation).
const SERVICES = ["intake", "routing", "mediation", "dispatch", "stats"];
const PREFIX = process.env.GRIDCASE_DATABASE_PREFIX || "gridcase";
const admin = db.getSiblingDB("admin");

for (const service of SERVICES) {
  const variable = `GRIDCASE_MONGO_${service.toUpperCase()}_PASSWORD`;
  const pwd = process.env[variable];
  if (!pwd) throw new Error(`${variable} is not set`);
  const roles = [{ role: "readWrite", db: `${PREFIX}_${service}` }];
  const spec = { pwd, roles, mechanisms: ["SCRAM-SHA-256"] };
  if (admin.getUser(service)) {
    admin.updateUser(service, spec, { w: "majority" });
    print(`updated user ${service} -> readWrite@${PREFIX}_${service}`);
  } else {
    admin.createUser({ user: service, ...spec }, { w: "majority" });
    print(`created user ${service} -> readWrite@${PREFIX}_${service}`);
  }
}
