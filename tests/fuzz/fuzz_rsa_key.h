/* The RSA key of fuzz_mysql's bridge (B3): fixed, so that make_seeds.py can encrypt password blobs
 * to it and a crash reproduces with the same key. A test key of no value: never use it elsewhere.
 */
#ifndef FUZZ_RSA_KEY_H
#define FUZZ_RSA_KEY_H

static const char fuzz_rsa_key_pem[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDW/lW9fJgRWDCD\n"
    "w5zTMSw1dKDGk6dMGs2E2Llbhl7D04iYFy+KqEXsl3P9ASngid4Cbpt9rH62FPoY\n"
    "V5aEBFev4XuzV2MONRElggy8dkY8idBldLt0M4H6fIChPVFxbjduVzJnutKopCPx\n"
    "mDPM7m7766MFHlMYvEWHeCdEC1KwsDJ8rBZvEDrMz5tPW4vXBTXJrzLx1KTfmlAi\n"
    "JWvPJFRR/qMGu/q7+b8qVKilCQfmXstRvw/+hui9f0kD3ENJJ1C0yEPPZCOky6p7\n"
    "tXAnJfSY7U+FyYq+zK58mFImSe9BMUVY9h3Imu/N1kHi9gZEuuPRrPxIOrgC+C/D\n"
    "cqBJ0fP/AgMBAAECggEAAaCLJZP70qXIODcSyMZmf0EStm4HphvN0mORg4/Qx8qi\n"
    "DgSe532+ibvbtN59YqWoeHw90QWtL9OY0PZYvUcLItmiBglzRnhAWPhTAFokzfB9\n"
    "E0d+47JAGZU3pADCzQj4gm1GhGJ1lbEoVHvCaJqlXGK8KR3Boz5JiGzwXyN2zL+F\n"
    "FGs0IMGW0f4m1frg4xKk8WP7l5jnyZsb6CneD6rBGc7gKOAALeSXzyHQfZs1ZAe0\n"
    "6S07aUpncOQR50puo/IsWkcyN+xiDtUwBM8c2sr+NdVIC3dGm2GHgOLWoTHZ9lel\n"
    "NUEO6jsfAKPJJMU080yHsg0wmGHuOLoQG9w6IuYKgQKBgQD0n2+/KZvXzkXiJKbA\n"
    "61vWe0VG6fUabjQs4r82s8TBQ9fb68qM6FTg6H0YFkOfiFXOiPUw/eJutPMCL5QA\n"
    "GGgYDFNhPFHtM11NqCm2TKJWVD6F503IT2ch/aaQ/TM5uVe1+mIuV2M/QWrvWFDI\n"
    "cANSy4wZpLwYhbYVjaoGiuazfQKBgQDg/h8nzuQW0q50+EXkwIx1/3v+1ADj/EqE\n"
    "p8YXaWdvqxEd8ZHqyOw/bmxnkP2q0yVnruiJDig6ZbQf7vKe3b8RMwMUk8r/Gxxf\n"
    "7MSse6AA8EzJO7zBEFvNUFD44qWYhwUlnWh+Qr9Po8Eck8FBsuuyyczwR1ouokXM\n"
    "1JP1CSZmKwKBgHBysf2f9OGZEorH6leYWVkYxVm5xk/mBNn1SYytym5E739KvotT\n"
    "aWERvh9KbL9y/m64im2A54uYZnTExjXdAky7rcBu6AIvsF44RSRlyeIBS9Rl5V2F\n"
    "EpWPcfgITHnmdylR9bvzs82qFqv7XvckdoKiyr4m+cgT/wWdX2EujKpJAoGAD+ws\n"
    "DEcqASt7yS9g0uWFizw/bDNYtMnABE9TR4jgFxkGJxZXe0Qo4/xOk63BJfu3Y/UO\n"
    "49QqqKdV7gSdCv0qbm8rwqMK9K7YfTlmWcaN9kMLTBp8KzWbKZaLhHGVwoubo6PW\n"
    "J0lV/K7cFcenH50n7Qk3BbInAbHeOra4mdjB7O0CgYAnz1xsNYI5pH0wAZiphRjH\n"
    "NrVEg/gHSXcReKDPxaP7G6WMa8odoBac5cllVV6oe5Gyh0oQ0KrOQr2JOvJcDbcZ\n"
    "p03xSlAtDkz38G02tykcj9PiWxn98KpahCdlIdjisizsz1tVBDrIh0Sc3F+JF5Gi\n"
    "5+wda2/c8+HM0wscR+Aipw==\n"
    "-----END PRIVATE KEY-----\n";

#endif
