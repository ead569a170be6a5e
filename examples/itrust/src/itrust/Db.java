package itrust;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

/**
 * The database settings come from the environment, as a Spring application reads them:
 * SPRING_DATASOURCE_URL, SPRING_DATASOURCE_USERNAME, SPRING_DATASOURCE_PASSWORD. None of them
 * is ever logged or shown (the URL may carry a password too).
 */
final class Db {
    static final String VERSION = loadVersion();
    /**
     * Defaults for the driver, which the URL's own options override: a dead database (no answer
     * to the connect) fails /health within 3 s, one that accepts but never answers within 5 s
     * (the driver's own defaults are 30 s and none).
     */
    static final String CONNECT_TIMEOUT_MS = "3000";
    static final String SOCKET_TIMEOUT_MS = "5000";
    private static volatile boolean tableReady;

    private Db() {}

    static {
        // The driver is in WEB-INF/lib: register it with DriverManager from this class loader.
        try {
            Class.forName("org.mariadb.jdbc.Driver");
        } catch (ClassNotFoundException e) {
            throw new IllegalStateException("the MariaDB JDBC driver is not in WEB-INF/lib", e);
        }
    }

    private static String loadVersion() {
        try (InputStream in = Db.class.getResourceAsStream("version.txt")) {
            if (in == null) return "unknown";
            return new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
        } catch (IOException e) {
            return "unknown";
        }
    }

    static final class NotConfigured extends SQLException {
        NotConfigured(String what) {
            super(what + " is not set: the instance's environment must give SPRING_DATASOURCE_URL, "
                + "SPRING_DATASOURCE_USERNAME and SPRING_DATASOURCE_PASSWORD");
        }
    }

    static Connection connect() throws SQLException {
        String url = System.getenv("SPRING_DATASOURCE_URL");
        if (url == null || url.isEmpty()) throw new NotConfigured("SPRING_DATASOURCE_URL");
        String user = System.getenv("SPRING_DATASOURCE_USERNAME");
        if (user == null || user.isEmpty()) throw new NotConfigured("SPRING_DATASOURCE_USERNAME");
        String password = System.getenv("SPRING_DATASOURCE_PASSWORD");
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password == null ? "" : password);
        props.setProperty("connectTimeout", CONNECT_TIMEOUT_MS);
        props.setProperty("socketTimeout", SOCKET_TIMEOUT_MS);
        Connection c = DriverManager.getConnection(url, props);
        if (!tableReady) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE IF NOT EXISTS patients ("
                    + "id INT AUTO_INCREMENT PRIMARY KEY, "
                    + "name VARCHAR(100) NOT NULL, "
                    + "created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)");
            } catch (SQLException e) {
                c.close();
                throw e;
            }
            tableReady = true;
        }
        return c;
    }

    /** A short description of a failure that names no setting's value. */
    static String describe(SQLException e) {
        if (e instanceof NotConfigured) return e.getMessage();
        String state = e.getSQLState() == null ? "" : " (SQLSTATE " + e.getSQLState() + ")";
        return "database unreachable or refused the query" + state;
    }

    static final class Patient {
        final int id;
        final String name;
        final String created;

        Patient(int id, String name, String created) {
            this.id = id;
            this.name = name;
            this.created = created;
        }

        String json() {
            return "{\"id\":" + id + ",\"name\":" + Json.str(name) + ",\"created\":" + Json.str(created) + "}";
        }
    }

    static List<Patient> patients(Connection c) throws SQLException {
        List<Patient> out = new ArrayList<>();
        try (Statement s = c.createStatement();
             ResultSet r = s.executeQuery("SELECT id, name, created FROM patients ORDER BY id")) {
            while (r.next()) out.add(new Patient(r.getInt(1), r.getString(2), String.valueOf(r.getTimestamp(3))));
        }
        return out;
    }

    static Patient add(Connection c, String name) throws SQLException {
        try (PreparedStatement p = c.prepareStatement(
                "INSERT INTO patients (name) VALUES (?)", Statement.RETURN_GENERATED_KEYS)) {
            p.setString(1, name);
            p.executeUpdate();
            try (ResultSet k = p.getGeneratedKeys()) {
                k.next();
                int id = k.getInt(1);
                try (PreparedStatement q = c.prepareStatement("SELECT id, name, created FROM patients WHERE id = ?")) {
                    q.setInt(1, id);
                    try (ResultSet r = q.executeQuery()) {
                        r.next();
                        return new Patient(r.getInt(1), r.getString(2), String.valueOf(r.getTimestamp(3)));
                    }
                }
            }
        }
    }

    /** A patient's name: 1 to 100 characters after trimming, no control characters. */
    static String checkName(String name) {
        if (name == null) return null;
        String n = name.strip();
        if (n.isEmpty() || n.codePointCount(0, n.length()) > 100) return null;
        for (int i = 0; i < n.length(); i++) if (Character.isISOControl(n.charAt(i))) return null;
        return n;
    }
}
