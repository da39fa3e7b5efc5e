// Signs with keys of a PKCS#11 token through Java's SunPKCS11 provider and
// verifies each signature with the public key of the key's certificate in a
// software provider. Then signs with a key pair that it generates on the
// token.
//
// Usage: java SignatureCheck <SunPKCS11 configuration file> <message file>
//
// The PIN comes from the environment variable P11WLD_TEST_PIN through a
// CallbackHandler, never from the command line. Prints one line per
// check: "RESULT <name> ok" or "RESULT <name> failed: <error>".

import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.PublicKey;
import java.security.Security;
import java.security.Signature;
import java.security.spec.AlgorithmParameterSpec;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.MGF1ParameterSpec;
import java.security.spec.PSSParameterSpec;
import javax.security.auth.callback.Callback;
import javax.security.auth.callback.CallbackHandler;
import javax.security.auth.callback.PasswordCallback;
import javax.security.auth.callback.UnsupportedCallbackException;

public class SignatureCheck {
    private static final String PIN_VARIABLE = "P11WLD_TEST_PIN";

    public static void main(String[] args) throws Exception {
        Provider provider = Security.getProvider("SunPKCS11").configure(args[0]);
        Security.addProvider(provider);
        KeyStore keyStore = KeyStore.Builder
            .newInstance("PKCS11", provider,
                new KeyStore.CallbackHandlerProtection(SignatureCheck::supplyPin))
            .getKeyStore();
        byte[] message = Files.readAllBytes(Paths.get(args[1]));

        PSSParameterSpec pss =
            new PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, 32, 1);
        check(keyStore, provider, "rsa-key", "SHA256withRSA", null,
            "SHA256withRSA", "SunRsaSign", message);
        check(keyStore, provider, "rsa-key", "RSASSA-PSS", pss,
            "RSASSA-PSS", "SunRsaSign", message);
        check(keyStore, provider, "rsa-key", "SHA256withRSASSA-PSS", pss,
            "RSASSA-PSS", "SunRsaSign", message);
        check(keyStore, provider, "ec-key", "SHA256withECDSA", null,
            "SHA256withECDSA", "SunEC", message);
        checkGeneratedKey(provider, message);
    }

    // Generates an EC key pair on the token with KeyPairGenerator, which
    // SunPKCS11 makes as session objects, signs with its private key and
    // verifies with its public key in SunEC.
    private static void checkGeneratedKey(Provider provider, byte[] message) {
        String name = "KeyPairGenerator-EC";
        try {
            KeyPairGenerator generator = KeyPairGenerator.getInstance("EC", provider);
            generator.initialize(new ECGenParameterSpec("secp256r1"));
            KeyPair pair = generator.generateKeyPair();

            Signature signer = Signature.getInstance("SHA256withECDSA", provider);
            signer.initSign(pair.getPrivate());
            signer.update(message);
            byte[] signature = signer.sign();

            Signature verifier = Signature.getInstance("SHA256withECDSA", "SunEC");
            verifier.initVerify(pair.getPublic());
            verifier.update(message);
            report(name, verifier.verify(signature));
        } catch (Exception error) {
            reportError(name, error);
        }
    }

    private static void report(String name, boolean verified) {
        if (verified) {
            System.out.println("RESULT " + name + " ok");
        } else {
            System.out.println("RESULT " + name + " failed: the signature does not verify");
        }
    }

    // Prints the error and its cause, which for SunPKCS11 names the PKCS#11
    // return code.
    private static void reportError(String name, Exception error) {
        String text = error.toString();
        if (error.getCause() != null) {
            text += ", caused by " + error.getCause();
        }
        System.out.println("RESULT " + name + " failed: " + text);
    }

    private static void supplyPin(Callback[] callbacks) throws UnsupportedCallbackException {
        for (Callback callback : callbacks) {
            if (!(callback instanceof PasswordCallback)) {
                throw new UnsupportedCallbackException(callback);
            }
            String pin = System.getenv(PIN_VARIABLE);
            if (pin == null) {
                throw new IllegalStateException(PIN_VARIABLE + " is not set");
            }
            ((PasswordCallback) callback).setPassword(pin.toCharArray());
        }
    }

    // Signs `message` with `algorithm` of the PKCS#11 provider, then verifies
    // with `verifierAlgorithm` of the software provider `verifierProvider`.
    private static void check(KeyStore keyStore, Provider provider, String alias,
            String algorithm, AlgorithmParameterSpec parameters, String verifierAlgorithm,
            String verifierProvider, byte[] message) {
        try {
            PrivateKey key = (PrivateKey) keyStore.getKey(alias, null);
            if (key == null) {
                throw new IllegalStateException("no private key " + alias + " in the key store");
            }
            Signature signer = Signature.getInstance(algorithm, provider);
            if (parameters != null) {
                signer.setParameter(parameters);
            }
            signer.initSign(key);
            signer.update(message);
            byte[] signature = signer.sign();

            PublicKey publicKey = keyStore.getCertificate(alias).getPublicKey();
            Signature verifier = Signature.getInstance(verifierAlgorithm, verifierProvider);
            if (parameters != null) {
                verifier.setParameter(parameters);
            }
            verifier.initVerify(publicKey);
            verifier.update(message);
            report(algorithm, verifier.verify(signature));
        } catch (Exception error) {
            reportError(algorithm, error);
        }
    }
}
