import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.QueryExecutionException;
import org.neo4j.io.ByteUnit;

/**
 * Runs Neo4j Community embedded with the Bolt connector, for igrec's local stack.
 *
 * Usage: java -cp "lib/*:." IgrecNeo4j HOME HOST PORT PASSWORD_FILE
 * All data and logs live under HOME. Authentication is on; the password of user "neo4j" is read from
 * PASSWORD_FILE and applied through the system database, so the same file always opens the database.
 * SIGTERM shuts the database down cleanly (shutdown hook).
 */
public final class IgrecNeo4j {
    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: IgrecNeo4j HOME HOST PORT PASSWORD_FILE");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        String host = args[1];
        int port = Integer.parseInt(args[2]);
        String password = Files.readString(Path.of(args[3])).strip();

        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
            .setConfig(BoltConnector.enabled, true)
            .setConfig(BoltConnector.listen_address, new SocketAddress(host, port))
            .setConfig(BoltConnector.advertised_address, new SocketAddress(host, port))
            .setConfig(HttpConnector.enabled, false)
            .setConfig(GraphDatabaseSettings.auth_enabled, true)
            .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(256))
            .setConfig(GraphDatabaseSettings.transaction_timeout, Duration.ofMinutes(5))
            .build();

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("igrec-neo4j: shutting down");
            dbms.shutdown();
            stopped.countDown();
        }));

        setPassword(dbms, password);
        System.out.println("igrec-neo4j: ready on bolt://" + host + ":" + port);
        stopped.await();
    }

    /** Make PASSWORD the password of user neo4j; on a restart with the same password nothing changes. */
    private static void setPassword(DatabaseManagementService dbms, String password) {
        try {
            dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME).executeTransactionally(
                "ALTER USER neo4j SET PASSWORD $password CHANGE NOT REQUIRED", Map.of("password", password));
        } catch (QueryExecutionException error) {
            if (!error.getMessage().contains("Old password and new password cannot be the same")) {
                throw error;
            }
        }
    }
}
