package itrust;

import jakarta.servlet.ServletContextEvent;
import jakarta.servlet.ServletContextListener;
import jakarta.servlet.annotation.WebListener;
import java.sql.Driver;
import java.sql.DriverManager;
import java.sql.SQLException;
import java.util.Collections;

/** Logs the version at start; on stop deregisters the JDBC drivers this application loaded. */
@WebListener
public class Lifecycle implements ServletContextListener {
    @Override
    public void contextInitialized(ServletContextEvent e) {
        e.getServletContext().log("itrust example version " + Db.VERSION + " started");
    }

    @Override
    public void contextDestroyed(ServletContextEvent e) {
        ClassLoader mine = getClass().getClassLoader();
        for (Driver d : Collections.list(DriverManager.getDrivers())) {
            if (d.getClass().getClassLoader() == mine) {
                try {
                    DriverManager.deregisterDriver(d);
                } catch (SQLException ignored) {
                    // Stopping anyway.
                }
            }
        }
    }
}
